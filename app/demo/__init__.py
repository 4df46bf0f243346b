"""The ten synthetic families of DESIGN.md, as the three kinds of source system would send them."""
