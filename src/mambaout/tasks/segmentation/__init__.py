"""UperNet (mmseg's) on any registered backbone, trained on ADE20K-format data through the engine."""
