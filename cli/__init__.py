"""The `distillery` command: run or serve the flow, write dvc.yaml, manage the model store, classify images."""
