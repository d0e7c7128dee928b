"""What the tests share: fake peers over real sockets, a player of recorded calls, real
servers (MariaDB, a lab Asterisk), and one free_port."""
