<?php
// What Binotel's PHP API client does, for the tests: sign requests (ksort + json_encode
// + md5), send them, and check an answer's signature the way the client does.
//
//   php binotel_client.php vectors KEY SECRET       one JSON line per test vector:
//                                                   {"name", "signed", "body"}
//   php binotel_client.php verify SECRET < answer   "ok", or "mismatch <text signed>"
//   php binotel_client.php roundtrip < documents    for each line (a JSON document):
//                                                   json_encode(ksort(json_decode(line, true)))
//   php binotel_client.php post BASE KEY SECRET < {"method": ..., "params": {...}}
//                                                   POST BASE/<method>.json like the client;
//                                                   prints {"http", "answer", "verified"}
//   php binotel_client.php read < answer            reads an answer the way Binotel's samples
//                                                   and CRMs written against them do, with
//                                                   every notice or warning an exception;
//                                                   prints what they would have found

function sign_params(array $params, string $secret): array {
    ksort($params);
    $text = json_encode($params);
    return [md5($secret . $text), $text];
}

function request_body(array $params, string $key, string $secret): array {
    [$signature, $text] = sign_params($params, $secret);
    $params['signature'] = $signature;
    $params['key'] = $key;
    return [json_encode($params), $text];
}

function answer_verifies(string $answer, string $secret): array {
    $data = json_decode($answer, true);
    if (!is_array($data) || !isset($data['signature'])) {
        return [false, ''];
    }
    $signature = $data['signature'];
    unset($data['signature']);
    ksort($data);
    $text = json_encode($data);
    return [md5($secret . $text) === $signature, $text];
}

function vectors(): array {
    return [
        'seed' => ['generalCallID' => [744924436]],
        'ids-as-strings' => ['generalCallID' => ['744924436', '12']],
        'single-id' => ['generalCallID' => 744924436],
        'slash-and-cyrillic' => ['generalCallID' => [1], 'comment' => 'Врач / тест', 'url' => 'https://clinic.example/a/b'],
        'nested' => ['generalCallID' => [1], 'filter' => ['zeta' => 1, 'alpha' => ['x/y', 'Ж', ['deep' => true]], 'list' => [3, 2, 1]]],
        'numbers-vs-strings' => ['generalCallID' => [1], 'n' => 5, 's' => '5', 'f' => 1.5, 'big' => 1.0e25,
                                 'whole' => 10.0, 'tiny' => 0.00001, 'neg' => -7, 'nothing' => null, 'flag' => false],
        'empty-containers' => ['generalCallID' => [1], 'emptyArray' => [], 'emptyObject' => new stdClass(),
                               'object' => (object)['b' => 1, 'a' => 2]],
        'numeric-keys' => ['generalCallID' => [1], '10' => 'ten', '9' => 'nine', '1.5' => 'x', '07' => 'y',
                           'B' => 'b', 'a' => 'a', 'Я' => 'ya', '-1' => 'minus', '_' => 'u'],
        'astral-and-controls' => ['generalCallID' => [1], 'emoji' => "😀", 'control' => "tab\tnl\n\x01\x7f",
                                  'quote' => 'he said "hi" \\'],
        'list-shaped' => [0 => 'a', 1 => 'b'],
        'call-record' => ['callID' => '744924436'],
        'ext-to-phone' => ['ext_number' => '902', 'phone_number' => '0639798793'],
    ];
}

$mode = $argv[1] ?? '';
if ($mode === 'vectors') {
    foreach (vectors() as $name => $params) {
        [$body, $text] = request_body($params, $argv[2], $argv[3]);
        echo json_encode(['name' => $name, 'signed' => $text, 'body' => $body]), "\n";
    }
} elseif ($mode === 'verify') {
    [$ok, $text] = answer_verifies(stream_get_contents(STDIN), $argv[2]);
    echo $ok ? "ok\n" : "mismatch $text\n";
} elseif ($mode === 'roundtrip') {
    foreach (explode("\n", trim(stream_get_contents(STDIN))) as $line) {
        $data = json_decode($line, true);
        if (is_array($data)) {
            ksort($data);
        }
        echo json_encode($data), "\n";
    }
} elseif ($mode === 'post') {
    [$base, $key, $secret] = [$argv[2], $argv[3], $argv[4]];
    $job = json_decode(stream_get_contents(STDIN), true);
    [$body, $text] = request_body($job['params'], $key, $secret);
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nContent-Length: " . strlen($body) . "\r\n",
        'content' => $body,
        'timeout' => 10,
        'ignore_errors' => true,
    ]]);
    $answer = file_get_contents($base . '/' . $job['method'] . '.json', false, $context);
    preg_match('{HTTP/\S+ (\d+)}', $http_response_header[0] ?? '', $status);
    [$ok, $signed] = answer_verifies((string)$answer, $secret);
    echo json_encode(['http' => (int)($status[1] ?? 0), 'answer' => json_decode((string)$answer, true),
                      'verified' => $ok]), "\n";
} elseif ($mode === 'read') {
    // PHP 8 turns what a CRM does wrong with a wrong shape into warnings (an undefined key)
    // or TypeErrors (a string used as an array); here every one of them is fatal.
    set_error_handler(function ($no, $message, $file, $line) {
        throw new ErrorException($message, 0, $no, $file, $line);
    });
    date_default_timezone_set('UTC');
    $result = json_decode(stream_get_contents(STDIN), true);
    $out = [];
    if ($result['status'] === 'success') {
        if (isset($result['callDetails'])) {
            // samples: "if (count($result['callDetails']) >= 2000) ... the period is too long"
            $out['count'] = count($result['callDetails']);
            $out['calls'] = [];
            foreach ($result['callDetails'] as $generalCallID => $callData) {
                // the samples' file name of a recording
                $name = date('d-m-Y_H-i', $callData['startTime']) . '_' . ($callData['callType'] === '0'
                    ? $callData['srcNumber'] . '_incoming'
                    : $callData['dstNumbers'][0]['dstNumber'] . '_outgoing');
                $attempts = [];
                foreach ($callData['dstNumbers'] as $dst) {
                    $attempts[] = $dst['dstNumber'] . ':' . $dst['disposition'] . ':' . $dst['billsec'];
                }
                $out['calls'][] = [
                    'id' => $result['callDetails'][$generalCallID]['generalCallID'],
                    'disposition' => $callData['disposition'],
                    'recording' => $name,
                    'seconds' => $callData['waitsec'] + (int)$callData['billsec'],
                    'employee' => $callData['employeeName'],
                    'customer' => $callData['customerData'],
                    'attempts' => implode(',', $attempts),
                    'trunk' => $callData['trunkNumber'],
                    'company' => $callData['companyID'],
                ];
            }
        }
        if (isset($result['listOfEmployees'])) {
            $out['employees'] = [];
            foreach ($result['listOfEmployees'] as $id => $info) {
                $online = $info['presenceState'] == 'active' && $info['extStatus']['status'] == 'online'
                    && $info['endpointData']['status']['status'] == 'online';
                $out['employees'][] = [$id, $info['endpointData']['internalNumber'], $info['name'], $info['email'],
                                       $online];
            }
        }
        if (isset($result['generalCallID'])) {
            $out['generalCallID'] = $result['generalCallID'];
        }
    } else {
        $out['error'] = sprintf('REST API error %s: %s', $result['code'], $result['message']);
    }
    echo json_encode($out, JSON_UNESCAPED_UNICODE), "\n";
} else {
    fwrite(STDERR, "usage: see the comment at the top\n");
    exit(2);
}
