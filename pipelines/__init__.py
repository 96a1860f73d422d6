"""pipelines: assemble xray_features steps into sklearn pipelines, and the CLIs."""
