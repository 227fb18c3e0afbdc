"""Preprocess: Delta images -> Delta processed: which samples to make (:mod:`.samples`), the Spark-free transform
of a batch (:mod:`.transform`), the job (:mod:`.run`).
"""
