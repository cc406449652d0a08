"""Inputs to the models: OSM and own labels, roads, extract, cover, masks and boxes, imagery, the synthetic city."""
