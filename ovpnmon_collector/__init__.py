"""The ovpnmon collector: polls OpenVPN, accounts bytes per client, writes SQLite."""
