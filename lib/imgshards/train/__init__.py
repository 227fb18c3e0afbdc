"""The training side: stream an exported split into PyTorch (:mod:`.loader`). No Spark; Petastorm optional."""
