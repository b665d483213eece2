"""The local stack: a SeaweedFS S3 server and a Prefect server, on 127.0.0.1 only."""
