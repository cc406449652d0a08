"""Hard-negative mining: what a first model takes for a class where the labels say background.

* :mod:`navml.mining.negatives`: the hard-negatives file (the viewer's review schema), vetoes, the tiles it covers;
* :mod:`navml.mining.mine`: run a model over train tiles inside the complete areas and collect its false regions;
* :mod:`navml.mining.retrain`: train again with those regions oversampled and weighted in the loss.
"""
