"""The Binotel-style API that Clinica Web calls on the PBX.

One module a job, in the order a request meets them: :mod:`server` (waitress) →
:mod:`app` (routes, body limit, signed answers) → :mod:`auth` (key and signature, using
:mod:`signature` and :mod:`php_json`) → a method: :mod:`call_details` (whose entry every
stats answer uses), :mod:`stats` (the lists of calls), :mod:`recordings`,
:mod:`click_to_call` and :mod:`hangup` (which talk to Asterisk through
:mod:`clinica_asterisk.pbx`), :mod:`employees`.  :mod:`directory` names the employee of an
extension; :mod:`stores` gives each serving thread its own call-store connection;
:mod:`errors` holds the error codes.
"""
