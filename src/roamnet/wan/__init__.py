"""The world outside the overlay: FRR processes and the border routers' BGP towards the WAN."""
