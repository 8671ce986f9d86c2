"""The TLS gateway: the one process of the box that loads pkcs11-provider.

The daemon never does TLS with a token key itself. It starts this gateway as a child process
(``python -m appliance.tlsgateway``, fork + exec) and talks plain HTTP to it over Unix sockets:

- egress (``egress.py``): daemon -> gateway socket -> mTLS with the ORG auth key -> a configured
  upstream (the DMP today); default deny.
- ingress (``ingress.py``, when ``http.tls = true``): HTTPS on ``http.bind:http.port`` with the
  server key -> the daemon's aiohttp app on its own socket, with the verified client certificate
  in a header the gateway owns.

So the daemon's PKCS#11 module can be re-initialised when a token comes back (SoftHSM needs it),
and the gateway, whose provider would not survive that, is simply restarted by its supervisor
(``supervisor.py``, a daemon component). ``contract.py`` holds what both sides agree on.
"""
