"""The RDMA read path: the sidecar process (``python -m rdma``) and, later, UCX and the mount."""
