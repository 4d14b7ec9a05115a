"""`fastrnn bench`: is fastrnn faster than torch.nn here, and does it compute the same numbers?

One concern per module:
    config       the grid of shapes (cell x T x B x H x dtype x mode x input form)
    workload     one shape's modules (torch.nn and its fastrnn twin, same weights) and inputs
    parity       every contender against torch.nn on each shape, before anything is timed
    timing       interleaved, warmed-up medians (CUDA events on the GPU)
    environment  the machine and versions a result was measured with
    cudnn        which cuDNN algorithm class torch.nn's call gets on a shape
    results      JSON and CSV out, and back in for the plotter
    table        the printed (markdown) summary
    plot         time per step and speedup against sequence length
    runner       the sweep that ties them together
"""
