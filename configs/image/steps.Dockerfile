# ZenML's step image for containerized stacks (pipelines/stack.py): the labelloop image, which
# holds every pinned dependency, as the parent ZenML puts its own layer on. Built as ZenML's
# "custom parent image" so a local parent is never pulled (podman reports digests for local
# images, which ZenML takes for "from a registry").
ARG LABELLOOP_IMAGE=localhost/labelloop:cpu
FROM ${LABELLOOP_IMAGE}
# The step runs the code of this run (ZenML downloads it from the artifact store), not the copy
# the labelloop image carries under its PYTHONPATH; the local Docker orchestrator picks the user.
ENV PYTHONPATH=
USER root
