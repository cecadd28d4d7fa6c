<?php
// A front controller in the style of Laravel's public/index.php: every URL without a file
// behind it ends up here, with the original URL in REQUEST_URI.
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);

function page(string $title, string $body): void {
    header('Content-Type: text/html; charset=utf-8');
    echo "<!doctype html><title>" . htmlspecialchars($title) . "</title>"
        . "<link rel=stylesheet href=/style.css><h1>" . htmlspecialchars($title) . "</h1>$body";
}

switch ($path) {
case '/':
    page('PHP behind the gateway', '<ul>'
        . '<li><a href="/hello">/hello</a>: plain text</li>'
        . '<li><a href="/posts/42?sort=new">/posts/42?sort=new</a>: a pretty URL</li>'
        . '<li><a href="/server">/server</a>, <a href="/params/any/path?x=1">/params/any/path?x=1</a>: '
        . 'what PHP sees in $_SERVER, as JSON</li>'
        . '<li><a href="/robots.txt">/robots.txt</a>: a static file</li>'
        . '<li><a href="/style.css">/style.css</a>: a static file, served without PHP</li>'
        . '<li><a href="/missing.php">/missing.php</a>: 404 without PHP</li>'
        . '<li><a href="/download/report.txt">/download/report.txt</a>: a protected file, '
        . 'handed out with X-Accel-Redirect (<a href="/protected/report.txt">/protected/report.txt</a> '
        . 'itself is a 404)</li>'
        . '</ul><form method=post action=/upload enctype=multipart/form-data>'
        . '<input type=file name=f> <button>Upload</button></form>'
        . '<p>Or <code>curl --data-binary @file https://127.0.0.1:8443/upload</code>: '
        . '<code>{"bytes", "md5"}</code> of the raw body.</p>');
    break;
case '/hello':
    header('Content-Type: text/plain');
    echo "Hello from PHP\n";
    break;
case '/server':
    header('Content-Type: application/json');
    echo json_encode($_SERVER, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES);
    break;
case '/upload':
    $f = $_FILES['f'] ?? null;
    if ($f !== null) {
        // The form (multipart/form-data): PHP has parsed the body into $_FILES.
        page('Upload', $f['error'] === UPLOAD_ERR_OK
            ? '<p>' . htmlspecialchars($f['name']) . ': ' . $f['size'] . ' bytes, md5 '
              . md5_file($f['tmp_name']) . '</p>'
            : '<p>No file.</p>');
        break;
    }
    // Any other body, as the client sent it: its size and MD5 (streamed, whatever its size).
    $in = fopen('php://input', 'rb');
    $ctx = hash_init('md5');
    $bytes = 0;
    while (!feof($in)) {
        $chunk = fread($in, 65536);
        if ($chunk === false) {
            break;
        }
        $bytes += strlen($chunk);
        hash_update($ctx, $chunk);
    }
    header('Content-Type: application/json');
    echo json_encode(['bytes' => $bytes, 'md5' => hash_final($ctx)]);
    break;
default:
    if (str_starts_with($path, '/params/')) {
        header('Content-Type: application/json');
        echo json_encode($_SERVER, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES);
        break;
    }
    if (preg_match('#^/download/([^/]+)$#', $path, $m)) {
        // A real app checks here that the user may have this file. PHP only names it: the
        // gateway serves it from its internal location /protected/ (examples/php/protected/),
        // with Range and ETag, and keeps the headers set here.
        $name = rawurldecode($m[1]);
        if (!preg_match('/^[A-Za-z0-9][A-Za-z0-9._-]*$/', $name)) {
            http_response_code(404);
            page('Not found', '<p>No such download.</p>');
            break;
        }
        header('Content-Type: text/plain; charset=utf-8');
        header('Content-Disposition: attachment; filename="' . $name . '"');
        header('X-Accel-Redirect: /protected/' . rawurlencode($name));
        // Never sent: the gateway answers with the file instead of this body.
        echo "If you can read this, the front server ignored X-Accel-Redirect.\n";
        break;
    }
    if (preg_match('#^/posts/(\d+)$#', $path, $m)) {
        page("Post {$m[1]}", '<p>Query: <code>' . htmlspecialchars($_SERVER['QUERY_STRING']) . '</code></p>');
        break;
    }
    http_response_code(404);
    page('Not found', '<p>No route for <code>' . htmlspecialchars($path) . '</code>.</p>');
}
