"""The command line and process runner: the only layer that knows about all the others."""
