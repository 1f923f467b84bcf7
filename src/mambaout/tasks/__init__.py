"""The training tasks, each a package that plugs its model, data, loss and metric into `engine/`."""
