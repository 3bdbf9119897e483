"""What procnetmon needs to know about the running kernel: struct layout, headers, features."""
