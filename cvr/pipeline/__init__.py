"""Pure DataFrame transforms: simulate, ingest, samples, features (hashing). IO lives in cvr.storage."""
