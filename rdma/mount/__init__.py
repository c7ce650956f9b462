"""kelp mount: a read-only FUSE view of topic data, read through the RDMA sidecar."""
