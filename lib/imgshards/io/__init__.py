"""File systems and storage: pyarrow file systems without Spark (:mod:`.filesystems`), Hadoop's through the
session (:mod:`.storage`), Petastorm's legacy adapter (:mod:`.petastorm_fs`).
"""
