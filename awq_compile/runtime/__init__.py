"""Run time: the custom op our pass puts in the graph, its dispatch to a kernel, and the weight cache.

``kernels/`` holds code generation and selection only; everything that runs per call lives here.
"""
