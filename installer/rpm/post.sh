# pvdrivers-guest %post: as the .deb's postinst (installer/debian/postinst).
# $1 is the number of versions installed (2 or more: an upgrade, whose
# old %preun runs after this and leaves the runtimes alone): the old
# runtimes are stopped and the new ones serve the devices.
if [ "$1" -gt 1 ]; then
    /usr/sbin/pv-install release-all || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    systemctl enable pvdrivers-guest.service || :
    systemctl restart systemd-modules-load.service || :
    sysctl -q -p /usr/lib/sysctl.d/60-pvdrivers-guest.conf || :
    systemctl restart pvdrivers-guest.service || echo "pvdrivers-guest: some devices are not served; see: pv-install status" >&2
else
    systemctl enable pvdrivers-guest.service || :
fi
