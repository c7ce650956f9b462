"""kelp benchmarks: each figure printed next to a raw baseline measured in the same run."""
