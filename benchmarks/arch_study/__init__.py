"""The parts of the architecture study (`benchmarks/architecture_study.py`): config, models,
variants, runner (training and timing), tables, report sections and the report writer."""
