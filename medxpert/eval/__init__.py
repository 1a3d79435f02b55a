"""Evaluation protocols, one module each, ranked after the pipeline they measure: `retrieval`,
`context`, `blend`, `fusion`, `thresholds`, `reports` (each a `run`), their sets in `sources`;
the pure metrics they use are in `medxpert.metrics`."""
