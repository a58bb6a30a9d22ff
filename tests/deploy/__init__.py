"""Deployment tests: the images, the compose stack and the operations they support, without a Docker engine."""
