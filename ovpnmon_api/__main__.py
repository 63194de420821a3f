from ovpnmon_api.cli import main

main()
