# Sourced by scripts/image and scripts/vm (bash).
#
# debian_mirrors SUITE: "deb URL SUITE main" lines for the Debian archive and security mirrors
# this machine's apt uses (whatever its sources files say), with the suite replaced by SUITE.
debian_mirrors() {
  apt-cache policy 2>/dev/null | awk -v suite="$1" '
    $1 ~ /^[0-9]+$/ && $2 ~ /^https?:/ && $NF == "Packages" { url = $2; dist = $3; next }
    url != "" && /release/ && /o=Debian,/ {
      split(dist, parts, "/")
      if (parts[1] ~ /-security$/) security = url; else if (archive == "") archive = url
      url = ""
    }
    END {
      if (archive == "") exit 1
      print "deb " archive " " suite " main"
      print "deb " archive " " suite "-updates main"
      if (security != "") print "deb " security " " suite "-security main"
    }'
}
