"""What the stages share: the params schema, where each file of a run lives, reading a run's outputs,
the library's settings from params, the command lines' common parts and the S3 model store."""
