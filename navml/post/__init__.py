"""After vectorization: drop what OSM has (dedupe), write JOSM files, score against truth."""
