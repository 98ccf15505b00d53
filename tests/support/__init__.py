"""What the tests share, by concern; tests and conftest modules import helpers from here
(``tests.support.<module>``) and from nowhere else under ``tests/`` (``tests/test_layout.py``).

- ``servers``: free ports, waiting, server processes and a real server in a thread
- ``apps``: settings and an in-process httpx client for the app
- ``models``: tiny ONNX graphs, their cards, model repositories on disk
- ``live_updates``: publishing versions into a repository while a server watches it
- ``training_inputs``: CIFAR-10 look-alikes and a tiny architecture for the training tests
- ``interop``: real CIFAR-10 test images and the shipped lecture model's repository
- ``feature_grids``: reading the explorer's feature grids back
- ``kserve_client``: the KServe SDK's clients, run in a process of their own
- ``logged_server``: ``python -m service`` with its log in a file (the soak and the fuzz)
- ``openapi``: the operations an OpenAPI document lists
- ``soak``, ``fuzz``: the soak's request mix and memory readings; schemathesis' two passes
- ``engines``, ``image_builds``, ``classify``, ``compose``: the container suite's engine (docker
  or podman) and base images, image builds, real images classified over REST and gRPC, compose
"""
