-- Prosody 0.12 (Debian 12) with a cpimgw gateway as an external component: an example.
--
-- What cpimgw needs from an existing Prosody is only the two parts marked "the gateway",
-- plus mod_ping on the virtual host (the gateway's write barrier pings it) and
-- mod_offline (users receive what arrived while they were logged out). The rest is a
-- minimal server on loopback; `make demo` runs this file as it is.
--
-- Values come from the environment (Prosody exposes $FOO to this file as ENV_FOO), with
-- defaults that fit examples/gateway.toml:
--   PROSODY_DIR        state folder (accounts, rosters, pid)        default: /var/lib/prosody
--   PROSODY_DOMAIN     the XMPP domain of the users                 default: xmpp.example.com
--   PROSODY_COMPONENT  the component domain the gateway serves      default: sip.example.com
--   PROSODY_COMPONENT_SECRET  shared with [adapters.xmpp] secret    (required)
--   PROSODY_C2S_PORT, PROSODY_COMPONENT_PORT                        default: 5222, 5347
--   PROSODY_CERTS      folder of TLS certificates for c2s (optional; without it c2s is cleartext)
--
-- Start in the foreground: prosody -F --config examples/prosody.cfg.lua
local dir = ENV_PROSODY_DIR or "/var/lib/prosody"
local domain = ENV_PROSODY_DOMAIN or "xmpp.example.com"

run_as_root = true            -- the demo may run as root; Prosody refuses uid 0 without it
data_path = dir .. "/data"
pidfile = dir .. "/prosody.pid"
log = { { levels = { min = ENV_PROSODY_LOGLEVEL or "info" }, to = "console" } }

interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { tonumber(ENV_PROSODY_C2S_PORT or "5222") }
s2s_ports = {}
http_ports = {}
https_ports = {}

local modules = { "roster"; "saslauth"; "disco"; "ping"; "offline"; }
certificates = ENV_PROSODY_CERTS or (dir .. "/certs")
if ENV_PROSODY_CERTS then
  modules[#modules + 1] = "tls"
  c2s_require_encryption = true
else
  c2s_require_encryption = false
  allow_unencrypted_plain_auth = true
end
modules_enabled = modules
modules_disabled = { "s2s"; }

allow_registration = false
authentication = "internal_hashed"
storage = "internal"

-- the gateway (global part) ------------------------------------------------------------------
-- XEP-0114 is cleartext: accept components on loopback (or a private link) only.
component_interfaces = { "127.0.0.1" }
component_ports = { tonumber(ENV_PROSODY_COMPONENT_PORT or "5347") }

VirtualHost (domain)

-- the gateway (its component) -----------------------------------------------------------------
Component (ENV_PROSODY_COMPONENT or "sip.example.com")
  component_secret = ENV_PROSODY_COMPONENT_SECRET
