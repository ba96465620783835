"""Paper B (arXiv 2512.00686, SPEC §3.8) on the run engine: its experiments, listed in
``experiments.catalogue``.

- ``spec``: the paper-B run kind (config, hash); ``grids``: every experiment's grid as data;
- ``families``: data, parameters, forward and loss per model family;
- ``engine``: deduplicated, resumable, replica-batched training and SGLD on any backend;
- ``scaling``: llc-polynomial, llc-low-rank, llc-autoencoder;
- ``arrhenius``: arrhenius-grokking, arrhenius-tms.
"""
