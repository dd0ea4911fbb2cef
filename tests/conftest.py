pytest_plugins = ["tests.s3_server", "tests.ray_cluster"]
