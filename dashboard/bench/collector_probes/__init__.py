"""Scripts ``flowerbed bench collectors`` runs inside each library's own virtualenv (files, not imports)."""
