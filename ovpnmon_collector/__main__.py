from ovpnmon_collector.cli import main

main()
