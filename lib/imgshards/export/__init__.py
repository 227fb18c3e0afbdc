"""Export: Delta processed -> one dataset per split in a published version folder: the Petastorm writer
(:mod:`.petastorm`), pixel statistics (:mod:`.stats`), the atomic publish (:mod:`.publish`), the job
(:mod:`.run`).
"""
