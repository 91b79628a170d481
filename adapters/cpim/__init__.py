"""cpimgw's native CPIM side: the RFC 3860/3859 operations over HTTP(S) for applications
and for gateway-to-gateway federation, bodies untouched. See docs/http-api.md."""
