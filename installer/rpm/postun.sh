# pvdrivers-guest %postun: forget the units.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
