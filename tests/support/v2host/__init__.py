"""The systemd + cgroup v2 QEMU test host: build.sh builds the image, boot.py boots it."""
