-- Prosody 0.12 config for cpimgw's tests: loopback only, all state in $PROSODY_DIR.
-- Nothing here touches /etc, /var or /run. Paths, ports, domains and the component secret come
-- from the environment (Prosody exposes $FOO to this file as ENV_FOO); tests/servers/prosody.py
-- sets them. Start with `prosody -F --config <this file>` (foreground); stop with SIGTERM.
local dir = ENV_PROSODY_DIR or "."

run_as_root = true            -- CI runs as root; ignored otherwise. Without it Prosody refuses uid 0.
data_path = dir .. "/data"
pidfile = dir .. "/prosody.pid"
log = { { levels = { min = ENV_PROSODY_LOGLEVEL or "info" }, to = "console" } }

interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
component_interfaces = { "127.0.0.1" }   -- XEP-0114 is cleartext: loopback only
c2s_ports = { tonumber(ENV_PROSODY_C2S_PORT) }
component_ports = { tonumber(ENV_PROSODY_COMPONENT_PORT) }
s2s_ports = {}
http_ports = {}
https_ports = {}

-- Options are write-only inside this file: build lists in locals first.
-- No mod_tls: with it loaded and no certificate, Prosody offers STARTTLS and the handshake fails.
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "offline"; }
-- mod_offline stays on: a message for a user who is logged out (say, during a restart) waits
modules_disabled = { "s2s"; }

allow_registration = false
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
certificates = dir .. "/certs"

VirtualHost (ENV_PROSODY_DOMAIN or "xmpp.test")

-- the gateway (XEP-0114 external component)
Component (ENV_PROSODY_COMPONENT or "sip.xmpp.test")
  component_secret = ENV_PROSODY_COMPONENT_SECRET
