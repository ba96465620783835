"""Paper A's figures as named experiments (SPEC §2 item 9, §3.9), one module per experiment.

The pattern every experiment module follows (paper B's experiments should too):

1. **Grids as data.** A module-level ``GRIDS = {"small": {...}, "paper": {...}}``: plain dicts in
   the sweep-file structure (``base``, ``grid``, ``points``, ``seeds``, ``device``) plus
   ``samplers`` ({label: LLC settings}, main one first; a second, calibrated sampler at paper
   scale is computed side by side) and the experiment's own keys. A paper grid keeps the paper's
   p, K, frac, optimiser, lr, wd, batch and sampler, uses ``device: "auto"``, and states in
   ``trim`` what was cut (seeds or grid points, never model size or sampler) to fit ~45 min on
   a 2-core CPU, so docs can print it.
2. **compute(grid, ctx) -> Output.** Expands the grid (``common.grid_configs``), runs it through
   the sweep engine (``common.run``: resumable, deduplicated by config hash, ``ctx.backend`` /
   ``ctx.workers``, rich progress), reads LLC rows only through ``store.query`` (via
   ``common.llc_by_epochs``) and returns plotted rows, summary rows and neutral facts. No
   matplotlib, no English about the results.
3. **plot(Output) -> {key: Figure}.** Plain numbers in, figures out; no file or database access.
4. ``EXPERIMENTS = (Experiment(name, description, GRIDS, compute, plot, METHOD),)``, where METHOD
   is fixed text about the method, listed in ``experiments.catalogue`` (one line). Prose that
   depends on results lives in ``docs/``.

Shared arguments (root, scale, backend, workers, device, progress) travel in one
``experiment.Context``. Small grids finish in minutes on a 2-core CPU. LLCs are SGLD estimates at
the stated sampler settings (absolute values depend on them, App. B.2); theory columns are the
closed forms of SPEC §3.4.
"""
