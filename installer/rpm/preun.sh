# pvdrivers-guest %preun: $1 is the number of versions left. On erase (0)
# stop every runtime and hand every device back to the kernel's driver;
# on upgrade the new %post (already run) did that.
if [ "$1" -eq 0 ]; then
    systemctl disable --now pvdrivers-guest.service || :
    /usr/sbin/pv-install release-all
fi
