//! The services the readiness benchmarks start: HTTP servers on a loopback
//! port (first argument) holding a large map (second argument: entries).

/// Python: imports many modules, then builds a dict.
pub const PYTHON: &str = r#"
import sys, http.server, json, asyncio, email.mime.text, xml.etree.ElementTree, sqlite3
import decimal, fractions, argparse, logging, urllib.request, csv, zipfile, tarfile, difflib
import statistics, unittest, pydoc, inspect, ast, dataclasses, typing, concurrent.futures
import ssl, http.client, hashlib, random, pickle, shelve, gettext, locale, calendar, smtplib
DATA = {i: str(i) * 8 for i in range(int(sys.argv[2]))}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"n": len(DATA), "x": DATA[12345]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// Java (run by the source launcher, which compiles it at start-up):
/// builds a map.
pub const JAVA: &str = r#"
import com.sun.net.httpserver.*;
import java.net.*;
import java.util.*;
public class Server {
    static Map<Integer, String> data = new HashMap<>();
    public static void main(String[] a) throws Exception {
        int n = Integer.parseInt(a[1]);
        for (int i = 0; i < n; i++) data.put(i, Integer.toString(i).repeat(4));
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(a[0])), 0);
        s.createContext("/", ex -> {
            byte[] b = ("{\"n\":" + data.size() + "}").getBytes();
            ex.sendResponseHeaders(200, b.length);
            ex.getResponseBody().write(b);
            ex.close();
        });
        s.start();
    }
}
"#;

/// Node.js: a heap of small objects, then a server.
pub const NODE: &str = r#"
const http = require("http");
const data = [];
for (let i = 0; i < Number(process.argv[3]); i++) data.push({ i, s: "v" + i });
http.createServer((req, res) => res.end(JSON.stringify({ n: data.length })))
    .listen(Number(process.argv[2]), "127.0.0.1");
"#;
