#!/bin/sh
# mmdebstrap --customize-hook: $1 is the root filesystem being built.
# Makes it boot on QEMU's first virtio disk with a serial console and run
# the test's scenario (pvtest-run.service) once booted.
set -eu
root=$1
here=$(dirname "$0")
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$root/etc/fstab"
printf 'pvtest\n' >"$root/etc/hostname"
install -m 0755 "$here/pvtest-run" "$root/usr/local/sbin/pvtest-run"
install -m 0644 "$here/pvtest-run.service" "$root/etc/systemd/system/pvtest-run.service"
ln -sf /etc/systemd/system/pvtest-run.service "$root/etc/systemd/system/default.target.wants/pvtest-run.service" 2>/dev/null || {
    mkdir -p "$root/etc/systemd/system/default.target.wants"
    ln -sf /etc/systemd/system/pvtest-run.service "$root/etc/systemd/system/default.target.wants/pvtest-run.service"
}
# Nothing on a timer may start apt while the scenario installs packages.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
done
passwd --root "$root" -d root >/dev/null
