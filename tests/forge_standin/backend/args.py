"""Stand-in for Forge's backend/args.py: ``dynamic_args``, which forge_model_reload fills before loading."""

dynamic_args = dict(embedding_dir="./embeddings", emphasis_name="original")
