"""Data plumbing shared by every job: labels, LMDB/WebDataset io, preprocessing, the teacher store.

This package sits at the bottom of the dependency graph: it imports nothing from `cache_teacher`,
`train_student` or `evaluate`, so both jobs can rely on it without importing each other.
"""
