// Work in progress: the adapter lands in the next commits.
