"""What benchmarks/runtime.py and benchmarks/memory.py share. Each command supplies only its measurement and its
tables; everything else is here, one part per module:

    cli.py         the flags, the device, main(): a run from the command line to the results files
    grids.py       every grid as data: its shapes, columns, default methods, comparisons and plot axes
    dense.py       the (B, H, N, D) call (seed, paper and model grids): shapes, inputs, methods, checked slice
    kvcache.py     the KV-cache decoding call (decode grid), likewise
    varlen.py      the packed variable-length call (varlen grid), likewise
    methods.py     what a method is, which are ours and which are peers, and the SDPA and FA4 calls
    checking.py    the float32 reference and the tolerance a method's output must meet
    timing.py      CUDA-event timing of interleaved calls, host time of back-to-back calls, the copy ceiling
    sweep.py       per shape: fresh inputs, one checked call per method, then the measurement; the run's DataFrame
    report.py      tables from the DataFrame (cells, footnotes, ratio columns) and the .md/.json/.csv files
    plot.py        the .png, from the DataFrame
    provenance.py  GPU, driver, versions, date, commit and settings: the header of every results file

A call kind (dense, kvcache, varlen) is a module with the same parts: `Shape` (with `work`, `label`), the axes
dataclasses its grids are made of (`shapes(dtype)`, `description`; the shape flags override their fields),
`make_inputs`, `reference` (the float32 check), `make_method(name)`, the method names it offers (`METHODS`), the rate
its work is counted in (`RATE`), and the sentences that say how its inputs are made (`INPUTS_TEXT`) and which slice
is checked (`CHECKED`).

Every method goes through a public entry point (`flash_attention.attention(..., backend=...)` and its KV-cache and
varlen siblings, `flash_attention.cuda.attention` for a forced kernel family, SDPA, FA4's `flash_attn_func`), never
into kernel internals, and nothing here writes os.environ (--smoke without a GPU restarts the command with
TRITON_INTERPRET=1 in a copy of it, see cli.py).
"""
